from otter.test_files import test_case

OK_FORMAT = False

name = "rgb_conv"
points = 2

@test_case(points=None, hidden=False)
def test_rgb_output_shape(rgb_output_shape):
    import cnn_checks
    cnn_checks.check_answer('rgb_output_shape', rgb_output_shape)

@test_case(points=None, hidden=False)
def test_rgb_params(rgb_params):
    import cnn_checks
    cnn_checks.check_answer('rgb_params', rgb_params)

