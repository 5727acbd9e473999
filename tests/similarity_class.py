"""A synthetic class of the cnn_mnist unit for the copied-code check (tests/test_similarity.py).

Six honest students who follow the lesson, each writing ``conv2d``, ``max_pool2d``, the model and
the training cell in their own way (every function is right: the tests check them against the
reference math), and two copies: ``gus`` is ``ana``'s notebook with every name changed, ``hal`` is
``chen``'s with independent lines reordered, comments rewritten and blank lines moved.
"""

from __future__ import annotations

HONEST: dict[str, dict[str, str]] = {
    "ana": {
        "conv2d": '''\
    kh, kw = kernel.shape
    h, w = image.shape
    if padding == "full":
        image = np.pad(image, ((kh - 1, kh - 1), (kw - 1, kw - 1)))
    elif padding == "same":
        oh = int(np.ceil(h / stride))
        ow = int(np.ceil(w / stride))
        pad_h = max((oh - 1) * stride + kh - h, 0)
        pad_w = max((ow - 1) * stride + kw - w, 0)
        image = np.pad(image, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
    out_h = (image.shape[0] - kh) // stride + 1
    out_w = (image.shape[1] - kw) // stride + 1
    result = np.zeros((out_h, out_w))
    for r in range(out_h):
        for c in range(out_w):
            window = image[r * stride:r * stride + kh, c * stride:c * stride + kw]
            result[r, c] = np.sum(window * kernel)
    return result''',
        "max_pool2d": '''\
    n_rows = x.shape[0] // size
    n_cols = x.shape[1] // size
    trimmed = x[:n_rows * size, :n_cols * size]
    return trimmed.reshape(n_rows, size, n_cols, size).max(axis=3).max(axis=1)''',
        "model": '''\
model.add(layers.Conv2D(32, (3, 3), activation='relu', input_shape=(28, 28, 1)))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3, 3), activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3, 3), activation='relu'))
model.add(layers.Flatten())
model.add(layers.Dense(64, activation='relu'))
model.add(layers.Dense(10, activation='softmax'))''',
        "training": '''\
# more epochs and smaller batches than the lesson, with a validation split to watch overfitting
model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=0.001),
              loss='sparse_categorical_crossentropy',
              metrics=['accuracy'])
history = model.fit(train_images, train_labels, epochs=12, batch_size=64, validation_split=0.1)
print(history.history['val_accuracy'][-1])''',
    },
    "ben": {
        "conv2d": '''\
    kr, kc = kernel.shape
    if padding == "valid":
        top = bottom = left = right = 0
    elif padding == "full":
        top = bottom = kr - 1
        left = right = kc - 1
    else:
        out_rows = -(-image.shape[0] // stride)
        out_cols = -(-image.shape[1] // stride)
        total_r = max((out_rows - 1) * stride + kr - image.shape[0], 0)
        total_c = max((out_cols - 1) * stride + kc - image.shape[1], 0)
        top, left = total_r // 2, total_c // 2
        bottom, right = total_r - top, total_c - left
    padded = np.zeros((image.shape[0] + top + bottom, image.shape[1] + left + right))
    padded[top:top + image.shape[0], left:left + image.shape[1]] = image
    n_out_r = (padded.shape[0] - kr) // stride + 1
    n_out_c = (padded.shape[1] - kc) // stride + 1
    out = np.zeros((n_out_r, n_out_c))
    for y in range(n_out_r):
        for x in range(n_out_c):
            total = 0.0
            for u in range(kr):
                for v in range(kc):
                    total += padded[y * stride + u, x * stride + v] * kernel[u, v]
            out[y, x] = total
    return out''',
        "max_pool2d": '''\
    out = np.zeros((x.shape[0] // size, x.shape[1] // size))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            best = x[i * size, j * size]
            for a in range(size):
                for b in range(size):
                    best = max(best, x[i * size + a, j * size + b])
            out[i, j] = best
    return out''',
        "model": '''\
model.add(layers.Input(shape=(28, 28, 1)))
model.add(layers.Conv2D(filters=32, kernel_size=(3, 3), activation="relu"))
model.add(layers.MaxPooling2D(pool_size=(2, 2)))
model.add(layers.Conv2D(filters=64, kernel_size=(3, 3), activation="relu"))
model.add(layers.MaxPooling2D(pool_size=(2, 2)))
model.add(layers.Conv2D(filters=64, kernel_size=(3, 3), activation="relu"))
model.add(layers.Flatten())
model.add(layers.Dense(units=64, activation="relu"))
model.add(layers.Dense(units=10, activation="softmax"))''',
        "training": '''\
opt = tf.keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(train_images, train_labels, batch_size=128, epochs=10)''',
    },
    "chen": {
        "conv2d": '''\
    import math
    fh, fw = kernel.shape

    def amount(n, f):
        if padding == "valid":
            return (0, 0)
        if padding == "full":
            return (f - 1, f - 1)
        need = max((math.ceil(n / stride) - 1) * stride + f - n, 0)
        return (need // 2, need - need // 2)

    src = np.pad(image, (amount(image.shape[0], fh), amount(image.shape[1], fw)))
    rows = (src.shape[0] - fh) // stride + 1
    cols = (src.shape[1] - fw) // stride + 1
    acc = np.zeros((rows, cols))
    # add up one shifted, strided copy of the input per kernel entry
    for a in range(fh):
        for b in range(fw):
            acc += kernel[a, b] * src[a:a + stride * (rows - 1) + 1:stride, b:b + stride * (cols - 1) + 1:stride]
    return acc''',
        "max_pool2d": '''\
    h = (x.shape[0] // size) * size
    w = (x.shape[1] // size) * size
    pieces = [x[i:h:size, j:w:size] for i in range(size) for j in range(size)]
    return np.maximum.reduce(pieces)''',
        "model": '''\
model.add(layers.Input(shape=(28, 28, 1)))
model.add(layers.Conv2D(32, (3, 3), activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3, 3), activation='relu'))
model.add(layers.MaxPooling2D((2, 2)))
model.add(layers.Conv2D(64, (3, 3), activation='relu'))
model.add(layers.Flatten())
model.add(layers.Dense(64, activation='relu'))
model.add(layers.Dense(10, activation='softmax'))''',
        "training": '''\
steps_per_epoch = len(train_images) // 100
lr = tf.keras.optimizers.schedules.ExponentialDecay(0.002, decay_steps=steps_per_epoch, decay_rate=0.8)
model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss='sparse_categorical_crossentropy', metrics=['accuracy'])
history = model.fit(train_images, train_labels, epochs=9, batch_size=100, shuffle=True)''',
    },
    "dara": {
        "conv2d": '''\
    k_rows, k_cols = kernel.shape
    if padding == "same":
        extra = []
        for n, k in [(image.shape[0], k_rows), (image.shape[1], k_cols)]:
            outn = (n + stride - 1) // stride
            p = max(0, (outn - 1) * stride + k - n)
            extra.append((p // 2, p - p // 2))
        padded = np.pad(image, extra)
    elif padding == "full":
        padded = np.pad(image, [(k_rows - 1,) * 2, (k_cols - 1,) * 2])
    else:
        padded = image
    starts_r = range(0, padded.shape[0] - k_rows + 1, stride)
    starts_c = range(0, padded.shape[1] - k_cols + 1, stride)
    return np.array([[float((padded[i:i + k_rows, j:j + k_cols] * kernel).sum()) for j in starts_c]
                     for i in starts_r]).reshape(len(starts_r), len(starts_c))''',
        "max_pool2d": '''\
    return np.array([[x[i:i + size, j:j + size].max() for j in range(0, x.shape[1] - size + 1, size)]
                     for i in range(0, x.shape[0] - size + 1, size)]).reshape(x.shape[0] // size, x.shape[1] // size)''',
        "model": '''\
model.add(layers.Conv2D(32, kernel_size=3, activation='relu', input_shape=(28, 28, 1)))
model.add(layers.MaxPooling2D(2))
model.add(layers.Conv2D(64, kernel_size=3, activation='relu'))
model.add(layers.MaxPooling2D(2))
model.add(layers.Conv2D(64, kernel_size=3, activation='relu'))
model.add(layers.Flatten())
model.add(layers.Dense(64, activation='relu'))
model.add(layers.Dense(10, activation='softmax'))''',
        "training": '''\
model.compile(optimizer=tf.keras.optimizers.RMSprop(learning_rate=0.0005),
              loss='sparse_categorical_crossentropy', metrics=['accuracy'])
model.fit(train_images, train_labels, epochs=8, batch_size=256,
          validation_data=(test_images, test_labels),
          callbacks=[tf.keras.callbacks.EarlyStopping(patience=2, restore_best_weights=True)])''',
    },
    "eli": {
        "conv2d": '''\
    kh, kw = kernel.shape
    pad = {"valid": [(0, 0), (0, 0)], "full": [(kh - 1, kh - 1), (kw - 1, kw - 1)]}
    if padding == "same":
        sizes = []
        for dim, k in zip(image.shape, (kh, kw)):
            t = max((int(np.ceil(dim / stride)) - 1) * stride + k - dim, 0)
            sizes.append((t // 2, t - t // 2))
        pad["same"] = sizes
    img = np.pad(image, pad[padding])
    oh = (img.shape[0] - kh) // stride + 1
    ow = (img.shape[1] - kw) // stride + 1
    # im2col: one row per output position, then a single matrix product
    cols = np.empty((oh * ow, kh * kw))
    for idx in range(oh * ow):
        i, j = divmod(idx, ow)
        cols[idx] = img[i * stride:i * stride + kh, j * stride:j * stride + kw].ravel()
    return (cols @ kernel.ravel()).reshape(oh, ow)''',
        "max_pool2d": '''\
    from numpy.lib.stride_tricks import sliding_window_view
    blocks = sliding_window_view(x, (size, size))[::size, ::size]
    return blocks.max(axis=(-2, -1))''',
        "model": '''\
model = models.Sequential([
    layers.Input(shape=(28, 28, 1)),
    layers.Conv2D(32, (3, 3), activation='relu'),
    layers.MaxPooling2D((2, 2)),
    layers.Conv2D(64, (3, 3), activation='relu'),
    layers.MaxPooling2D((2, 2)),
    layers.Conv2D(64, (3, 3), activation='relu'),
    layers.Flatten(),
    layers.Dense(64, activation='relu'),
    layers.Dense(10, activation='softmax'),
])''',
        "training": '''\
EPOCHS = 15
BATCH = 256
decay = tf.keras.optimizers.schedules.CosineDecay(0.003, decay_steps=EPOCHS * (60000 // BATCH + 1))
model.compile(optimizer=tf.keras.optimizers.Adam(decay), loss='sparse_categorical_crossentropy',
              metrics=['accuracy'])
model.fit(train_images, train_labels, epochs=EPOCHS, batch_size=BATCH, verbose=2)''',
    },
    "fay": {
        "conv2d": '''\
    def same_pad(n, k):
        out = -(-n // stride)
        t = max((out - 1) * stride + k - n, 0)
        return t // 2, t - t // 2

    if padding == "same":
        image = np.pad(image, (same_pad(image.shape[0], kernel.shape[0]), same_pad(image.shape[1], kernel.shape[1])))
    if padding == "full":
        image = np.pad(image, ((kernel.shape[0] - 1,) * 2, (kernel.shape[1] - 1,) * 2))
    res = []
    i = 0
    while i + kernel.shape[0] <= image.shape[0]:
        row = []
        j = 0
        while j + kernel.shape[1] <= image.shape[1]:
            row.append(np.tensordot(image[i:i + kernel.shape[0], j:j + kernel.shape[1]], kernel))
            j += stride
        res.append(row)
        i += stride
    return np.array(res, dtype=float)''',
        "max_pool2d": '''\
    out_r, out_c = x.shape[0] // size, x.shape[1] // size
    pooled = np.full((out_r, out_c), -np.inf)
    for dr in range(size):
        for dc in range(size):
            pooled = np.maximum(pooled, x[dr:out_r * size:size, dc:out_c * size:size])
    return pooled''',
        "model": '''\
for layer in (layers.Input((28, 28, 1)),
              layers.Conv2D(32, 3, activation="relu"), layers.MaxPooling2D(),
              layers.Conv2D(64, 3, activation="relu"), layers.MaxPooling2D(),
              layers.Conv2D(64, 3, activation="relu"),
              layers.Flatten(), layers.Dense(64, activation="relu"), layers.Dense(10, activation="softmax")):
    model.add(layer)''',
        "training": '''\
train_ds = (tf.data.Dataset.from_tensor_slices((train_images, train_labels))
            .shuffle(60000).batch(128).prefetch(tf.data.AUTOTUNE))
model.compile(optimizer=tf.keras.optimizers.Adam(5e-4), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
model.fit(train_ds, epochs=12)''',
    },
}

#: ``gus``: ana's notebook with every name of her own changed (function and loop variables, the history)
RENAMED_COPY: dict[str, str] = {
    "conv2d": '''\
    fr, fc = kernel.shape
    ir, ic = image.shape
    if padding == "full":
        image = np.pad(image, ((fr - 1, fr - 1), (fc - 1, fc - 1)))
    elif padding == "same":
        tr = int(np.ceil(ir / stride))
        tc = int(np.ceil(ic / stride))
        extra_r = max((tr - 1) * stride + fr - ir, 0)
        extra_c = max((tc - 1) * stride + fc - ic, 0)
        image = np.pad(image, ((extra_r // 2, extra_r - extra_r // 2), (extra_c // 2, extra_c - extra_c // 2)))
    rows_out = (image.shape[0] - fr) // stride + 1
    cols_out = (image.shape[1] - fc) // stride + 1
    feature = np.zeros((rows_out, cols_out))
    for p in range(rows_out):
        for q in range(cols_out):
            patch = image[p * stride:p * stride + fr, q * stride:q * stride + fc]
            feature[p, q] = np.sum(patch * kernel)
    return feature''',
    "max_pool2d": '''\
    nr = x.shape[0] // size
    nc = x.shape[1] // size
    cut = x[:nr * size, :nc * size]
    return cut.reshape(nr, size, nc, size).max(axis=3).max(axis=1)''',
    "model": HONEST["ana"]["model"],
    "training": '''\
model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=0.001),
              loss='sparse_categorical_crossentropy',
              metrics=['accuracy'])
hist = model.fit(train_images, train_labels, epochs=12, batch_size=64, validation_split=0.1)
print(hist.history['val_accuracy'][-1])''',
}

#: ``hal``: chen's notebook with independent lines reordered, comments rewritten, blank lines moved
REORDERED_COPY: dict[str, str] = {
    "conv2d": '''\
    fh, fw = kernel.shape
    import math

    # how much zero padding goes before and after, for one axis
    def amount(n, f):
        if padding == "full":
            return (f - 1, f - 1)
        if padding == "valid":
            return (0, 0)
        need = max((math.ceil(n / stride) - 1) * stride + f - n, 0)
        return (need // 2, need - need // 2)
    src = np.pad(image, (amount(image.shape[0], fh), amount(image.shape[1], fw)))

    cols = (src.shape[1] - fw) // stride + 1
    rows = (src.shape[0] - fh) // stride + 1
    acc = np.zeros((rows, cols))
    for a in range(fh):
        for b in range(fw):  # kernel entry (a, b) times the matching strided view
            acc += kernel[a, b] * src[a:a + stride * (rows - 1) + 1:stride, b:b + stride * (cols - 1) + 1:stride]
    return acc''',
    "max_pool2d": '''\
    w = (x.shape[1] // size) * size
    h = (x.shape[0] // size) * size
    # every offset inside a block, then the largest
    pieces = [x[i:h:size, j:w:size] for i in range(size) for j in range(size)]
    return np.maximum.reduce(pieces)''',
    "model": HONEST["chen"]["model"],
    "training": '''\
steps_per_epoch = len(train_images) // 100
lr = tf.keras.optimizers.schedules.ExponentialDecay(0.002, decay_steps=steps_per_epoch, decay_rate=0.8)
# Adam with a decaying rate
model.compile(optimizer=tf.keras.optimizers.Adam(lr), loss='sparse_categorical_crossentropy', metrics=['accuracy'])
history = model.fit(train_images, train_labels, epochs=9, batch_size=100, shuffle=True)''',
}

CLASS: dict[str, dict[str, str]] = {**HONEST, "gus": RENAMED_COPY, "hal": REORDERED_COPY}
COPIED_PAIRS = {("ana", "gus"), ("chen", "hal")}
