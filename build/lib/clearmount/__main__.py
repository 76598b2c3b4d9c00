from clearmount.cli import main

main()
