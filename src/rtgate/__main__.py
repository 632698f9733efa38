from rtgate.cli import main

main()
