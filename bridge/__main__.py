from dspy_bridge.entry import main

main()
