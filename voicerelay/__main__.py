from voicerelay.cli import main

main()
