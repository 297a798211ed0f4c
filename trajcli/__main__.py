from trajcli.cli import main

main()
