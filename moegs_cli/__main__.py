from moegs_cli.app import main

main()
