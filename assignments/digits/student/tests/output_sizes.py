from otter.test_files import test_case

OK_FORMAT = False

name = "output_sizes"
points = 4

@test_case(points=None, hidden=False)
def test_size_valid(size_valid):
    import digits_checks
    digits_checks.check_answer('size_valid', size_valid)

@test_case(points=None, hidden=False)
def test_size_same(size_same):
    import digits_checks
    digits_checks.check_answer('size_same', size_same)

@test_case(points=None, hidden=False)
def test_size_stride2(size_stride2):
    import digits_checks
    digits_checks.check_answer('size_stride2', size_stride2)

@test_case(points=None, hidden=False)
def test_size_same_stride2(size_same_stride2):
    import digits_checks
    digits_checks.check_answer('size_same_stride2', size_same_stride2)

