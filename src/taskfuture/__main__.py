from taskfuture.cli import main

main()
