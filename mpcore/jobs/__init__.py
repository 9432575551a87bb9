"""The jobs behind the commands and the public API: one run (prepare -> load -> mpcore.generate + save), a
prompt list, several processes, the discriminator recipe.

They raise mpcore errors (:class:`mpcore.config.ConfigError` and its :class:`mpcore.jobs.options.OptionError`,
the job's own), never click ones; :mod:`mpcore.cli` turns them into messages."""
