from homeport.cli import main

main()
