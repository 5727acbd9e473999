from otter.test_files import test_case

OK_FORMAT = False

name = "max_pool_impl"
points = 2

@test_case(points=None, hidden=False)
def test_max_pool2d(max_pool2d):
    import cnn_checks
    cnn_checks.check_function('max_pool2d', max_pool2d)

