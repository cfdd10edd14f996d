from dspy_bridge.main import main

main()
