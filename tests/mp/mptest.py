# A tiny test runner for the MicroPython unix port: call run(globals()) at the end of a script.
import sys


def run(scope):
    names = sorted(k for k in scope if k.startswith("test_"))
    passed = failed = 0
    for name in names:
        try:
            scope[name]()
            passed += 1
        except Exception as exc:  # report every failing test, then fail the script
            failed += 1
            print("FAIL", name)
            sys.print_exception(exc)
    print("%d passed, %d failed" % (passed, failed))
    if failed:
        sys.exit(1)
