from ecdna_exp.task import main

main()
