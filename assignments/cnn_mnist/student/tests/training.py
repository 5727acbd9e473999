from otter.test_files import test_case

OK_FORMAT = False

name = "training"
points = [1]

@test_case(points=None, hidden=False)
def test_training(model):
    import cnn_checks
    cnn_checks.check_training(model)

