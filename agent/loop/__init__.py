"""The research loop: a LangGraph state machine (graph, state, nodes), how it is started and
resumed (launch), the keep rule (decision), the live view (view), and `train`'s one-experiment
run (train_once)."""
