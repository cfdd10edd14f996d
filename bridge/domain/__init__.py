"""What the bridge knows without DSPy: LM configs, signatures, and the engine port."""
