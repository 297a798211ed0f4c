import sys

import trajcli

if getattr(trajcli, "__file__", None) is None:
    # `python -m trajcli` in the folder that holds a clone named trajcli: that folder (no __init__.py)
    # is imported as a namespace package and hides the editable install.
    where = ", ".join(trajcli.__path__)
    print(f"trajcli: error: the folder {where} hides the installed trajcli package (python -m puts the "
          "current folder first)\n  hint: run it from another folder, or use the trajcli command", file=sys.stderr)
    sys.exit(2)

from trajcli.launch import main

main()
