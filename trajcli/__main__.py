from trajcli.launch import main

main()
