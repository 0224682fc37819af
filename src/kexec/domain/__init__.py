"""The domain: phases, actions, safety rules. Standard library only."""
