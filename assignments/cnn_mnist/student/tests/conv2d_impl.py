from otter.test_files import test_case

OK_FORMAT = False

name = "conv2d_impl"
points = 4

@test_case(points=None, hidden=False)
def test_conv2d(conv2d):
    import cnn_checks
    cnn_checks.check_function('conv2d', conv2d)

