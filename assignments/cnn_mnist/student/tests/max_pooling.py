from otter.test_files import test_case

OK_FORMAT = False

name = "max_pooling"
points = 2

@test_case(points=None, hidden=False)
def test_pooled(pooled):
    import cnn_checks
    cnn_checks.check_answer('pooled', pooled)

