from otter.test_files import test_case

OK_FORMAT = False

name = "output_sizes"
points = 4

@test_case(points=None, hidden=False)
def test_size_valid(size_valid):
    import cnn_checks
    cnn_checks.check_answer('size_valid', size_valid)

@test_case(points=None, hidden=False)
def test_size_same(size_same):
    import cnn_checks
    cnn_checks.check_answer('size_same', size_same)

@test_case(points=None, hidden=False)
def test_size_full(size_full):
    import cnn_checks
    cnn_checks.check_answer('size_full', size_full)

@test_case(points=None, hidden=False)
def test_size_stride2(size_stride2):
    import cnn_checks
    cnn_checks.check_answer('size_stride2', size_stride2)

