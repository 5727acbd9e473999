from otter.test_files import test_case

OK_FORMAT = False

name = "model_structure"
points = 3

@test_case(points=None, hidden=False)
def test_model(model):
    import cnn_checks
    cnn_checks.check_model(model)

