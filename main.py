"""blindsr command line: ``python main.py {fit,validate,test,predict} -c configs/<method>/<stage>.yaml [-c more]``.

The CLI itself (links, W&B defaults, checkpoint checks) is ``lightning_modules.core.cli``; ``--help`` lists every
argument.
"""

from lightning_modules.core.cli import cli_main

if __name__ == "__main__":
    cli_main()
