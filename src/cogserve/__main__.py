from cogserve.cli import main

main()
