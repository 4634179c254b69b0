"""The embedding worker: load → decode → encode → write back."""
