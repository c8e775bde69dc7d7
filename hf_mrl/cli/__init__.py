"""The `hf-mrl` command line (`hf_mrl.cli.main:main`): argument parsing around the library; nothing else imports it."""
