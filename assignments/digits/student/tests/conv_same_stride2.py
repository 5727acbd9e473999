from otter.test_files import test_case

OK_FORMAT = False

name = "conv_same_stride2"
points = 2

@test_case(points=None, hidden=False)
def test_conv_same_stride2(conv_same_stride2):
    import digits_checks
    digits_checks.check_answer('conv_same_stride2', conv_same_stride2)

