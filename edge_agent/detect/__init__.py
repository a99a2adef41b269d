"""Detection: the TFLite interpreter wrapper and one pure-numpy decoder per model family."""
