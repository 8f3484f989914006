from lkd.cli import main

main()
