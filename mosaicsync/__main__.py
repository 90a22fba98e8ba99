from mosaicsync.cli import main

main()
