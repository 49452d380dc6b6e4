from stem_cli import main

main()
