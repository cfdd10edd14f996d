from bridge.entry import main

main()
