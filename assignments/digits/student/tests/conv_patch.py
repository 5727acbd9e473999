from otter.test_files import test_case

OK_FORMAT = False

name = "conv_patch"
points = 2

@test_case(points=None, hidden=False)
def test_conv_patch(conv_patch):
    import digits_checks
    digits_checks.check_answer('conv_patch', conv_patch)

