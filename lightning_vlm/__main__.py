from lightning_vlm.cli import main

main()
