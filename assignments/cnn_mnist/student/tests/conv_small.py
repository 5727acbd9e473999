from otter.test_files import test_case

OK_FORMAT = False

name = "conv_small"
points = 2

@test_case(points=None, hidden=False)
def test_conv_small(conv_small):
    import cnn_checks
    cnn_checks.check_answer('conv_small', conv_small)

