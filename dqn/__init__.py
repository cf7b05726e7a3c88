"""MinAtar DQN agents used as data policies (train them with `python dqn/train_agents.py`)."""
