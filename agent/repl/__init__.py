"""`magnet-agent repl`: `session` (attach, the command loop and the commands), `commands` (the
table and completion), `terminal` (prompts), `approval` (the yes / no / edit dialog), `watcher`
(the thread that tails the run), `launch` (starting a run in the background)."""
