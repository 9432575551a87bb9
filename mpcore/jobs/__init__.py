"""The jobs behind the commands: one run (prepare -> load -> generate_one), a prompt list, several processes.

They raise mpcore errors (:mod:`mpcore.errors`), never click ones; :mod:`mpcore.cli` turns them into messages."""
