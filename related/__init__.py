"""Related systems from the same literature, each a module the stage scripts call at one hook or run as
`python -m related.<name>`: SparseGPT, SAT-style omission, soft prompts, the parameter-subspace analysis."""
