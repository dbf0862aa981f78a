"""The files of a checkpoint directory, named once: bitnet.checkpoint writes and reads them, and
the controller's records of a run (agent.scoring.replay_facts) and its checkpoint references
name them without importing torch (two seconds of a core in every controller)."""

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"  # the model's tokenizer (bitnet.tokenizer, bitnet.hf_tokenizer)
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
