from otter.test_files import test_case

OK_FORMAT = False

name = "edge_output"
points = 2

@test_case(points=None, hidden=False)
def test_edge_output(edge_output):
    import cnn_checks
    cnn_checks.check_answer('edge_output', edge_output)

