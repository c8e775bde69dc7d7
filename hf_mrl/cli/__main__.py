from hf_mrl.cli.main import main

main()
