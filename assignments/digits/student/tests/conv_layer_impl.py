from otter.test_files import test_case

OK_FORMAT = False

name = "conv_layer_impl"
points = 4

@test_case(points=None, hidden=False)
def test_conv_layer(conv_layer):
    import digits_checks
    digits_checks.check_function('conv_layer', conv_layer)

