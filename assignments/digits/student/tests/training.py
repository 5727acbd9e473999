from otter.test_files import test_case

OK_FORMAT = False

name = "training"
points = [1]

@test_case(points=None, hidden=False)
def test_training(model):
    import digits_checks
    digits_checks.check_training(model)

