from otter.test_files import test_case

OK_FORMAT = False

name = "layer_table"
points = 6

@test_case(points=None, hidden=False)
def test_layer_output_shapes(layer_output_shapes):
    import cnn_checks
    cnn_checks.check_answer('layer_output_shapes', layer_output_shapes)

@test_case(points=None, hidden=False)
def test_layer_params(layer_params):
    import cnn_checks
    cnn_checks.check_answer('layer_params', layer_params)

@test_case(points=None, hidden=False)
def test_total_params(total_params):
    import cnn_checks
    cnn_checks.check_answer('total_params', total_params)

