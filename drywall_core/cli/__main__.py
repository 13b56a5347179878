from drywall_core.cli import main

main()
