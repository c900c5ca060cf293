"""Column layouts: the fixed formats (NSL-KDD, HTRU2) and how raw columns become features.

One source of truth for every ingest path (CSV, Parquet, adopted Zarr) and the synthetic
traffic generator, so that a synthetic log and a real NSL-KDD file produce identical feature
layouts.  :class:`FeatureLayout` maps raw columns to the float32 feature columns of a store
(numeric as they are, categorical one-hot with an ``<unknown>`` slot); it knows nothing about
files.
"""

from __future__ import annotations

import itertools

import numpy as np

NSLKDD_COLUMNS = [
    "duration", "protocol_type", "service", "flag", "src_bytes", "dst_bytes", "land",
    "wrong_fragment", "urgent", "hot", "num_failed_logins", "logged_in", "num_compromised",
    "root_shell", "su_attempted", "num_root", "num_file_creations", "num_shells",
    "num_access_files", "num_outbound_cmds", "is_host_login", "is_guest_login", "count",
    "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate",
    "same_srv_rate", "diff_srv_rate", "srv_diff_host_rate", "dst_host_count",
    "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
    "dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
    "dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate",
    "label", "difficulty",
]  # fmt: skip
NSLKDD_LABEL = "label"
NSLKDD_IGNORE = ("difficulty",)  # not a feature: how many reference classifiers got it right
NSLKDD_NORMAL = "normal"

# Vocabularies of KDDTrain+ (which covers every value of the test files).  Ingest appends an
# explicit "<unknown>" slot to each, so unseen values at scoring time never crash or misalign.
NSLKDD_CATEGORIES = {
    "protocol_type": ["icmp", "tcp", "udp"],
    "service": [
        "IRC", "X11", "Z39_50", "aol", "auth", "bgp", "courier", "csnet_ns", "ctf", "daytime",
        "discard", "domain", "domain_u", "echo", "eco_i", "ecr_i", "efs", "exec", "finger",
        "ftp", "ftp_data", "gopher", "harvest", "hostnames", "http", "http_2784", "http_443",
        "http_8001", "imap4", "iso_tsap", "klogin", "kshell", "ldap", "link", "login", "mtp",
        "name", "netbios_dgm", "netbios_ns", "netbios_ssn", "netstat", "nnsp", "nntp", "ntp_u",
        "other", "pm_dump", "pop_2", "pop_3", "printer", "private", "red_i", "remote_job", "rje",
        "shell", "smtp", "sql_net", "ssh", "sunrpc", "supdup", "systat", "telnet", "tftp_u",
        "tim_i", "time", "urh_i", "urp_i", "uucp", "uucp_path", "vmnet", "whois",
    ],
    "flag": ["OTH", "REJ", "RSTO", "RSTOS0", "RSTR", "S0", "S1", "S2", "S3", "SF", "SH"],
}  # fmt: skip

# The usual 4-category mapping (DoS/Probe/R2L/U2R); httptunnel -> R2L and worm -> DoS,
# as in shared/data/README.md.
NSLKDD_ATTACK_CATEGORY = {
    **dict.fromkeys(["back", "land", "neptune", "pod", "smurf", "teardrop", "apache2",
                     "mailbomb", "processtable", "udpstorm", "worm"], "DoS"),
    **dict.fromkeys(["ipsweep", "nmap", "portsweep", "satan", "mscan", "saint"], "Probe"),
    **dict.fromkeys(["ftp_write", "guess_passwd", "imap", "multihop", "phf", "spy",
                     "warezclient", "warezmaster", "httptunnel", "named", "sendmail",
                     "snmpgetattack", "snmpguess", "xlock", "xsnoop"], "R2L"),
    **dict.fromkeys(["buffer_overflow", "loadmodule", "perl", "rootkit", "ps", "sqlattack",
                     "xterm"], "U2R"),
}  # fmt: skip

HTRU2_COLUMNS = [
    "profile_mean", "profile_stdev", "profile_excess_kurtosis", "profile_skewness",
    "dmsnr_mean", "dmsnr_stdev", "dmsnr_excess_kurtosis", "dmsnr_skewness", "class",
]  # fmt: skip
HTRU2_LABEL = "class"

UNKNOWN = "<unknown>"


# --------------------------------------------------------------------------------------
# Feature layout
# --------------------------------------------------------------------------------------


class FeatureLayout:
    """How raw columns become feature columns: numeric as is, categorical one-hot in place.

    Parameters
    ----------
    columns : list of str
        Raw column names.
    feature_columns : list of int
        Indices of the raw columns that become features, in order.
    categories : dict
        ``{column name: vocabulary}`` for the categorical feature columns.  ``"<unknown>"`` is
        appended to a vocabulary that does not already end with it.
    """

    def __init__(self, columns, feature_columns, categories):
        self.columns = list(columns)
        self.feature_columns = list(feature_columns)
        self.categories = {}
        for c, vocab in categories.items():
            vocab = [v for v in vocab if v != UNKNOWN] + [UNKNOWN]
            self.categories[c] = vocab
        names: list[str] = []
        self.numeric_columns: list[int] = []  # raw indices
        self.numeric_pos: list[int] = []  # their feature positions
        self.categorical_columns: list[int] = []
        self.offsets: list[int] = []  # first feature position of each categorical column
        self.luts: list[dict[str, int]] = []
        for i in self.feature_columns:
            c = self.columns[i]
            if c in self.categories:
                vocab = self.categories[c]
                self.categorical_columns.append(i)
                self.offsets.append(len(names))
                self.luts.append({v: k for k, v in enumerate(vocab)})
                names.extend(f"{c}={v}" for v in vocab)
            else:
                self.numeric_columns.append(i)
                self.numeric_pos.append(len(names))
                names.append(c)
        self.feature_names = names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def codes(self, k: int, values) -> np.ndarray:
        """Vocabulary codes of the ``k``-th categorical column; unseen values -> ``<unknown>``."""
        lut = self.luts[k]
        unknown = len(lut) - 1
        return np.fromiter(map(lut.get, values, itertools.repeat(unknown)), np.intp)

    def encode(self, numeric: np.ndarray, codes: list[np.ndarray]) -> np.ndarray:
        """Build the float32 feature block.

        Parameters
        ----------
        numeric : array (n, n_numeric)
            Numeric columns in ``numeric_columns`` order.
        codes : list of int arrays (n,)
            One per categorical column, in ``categorical_columns`` order.
        """
        n = numeric.shape[0]
        x = np.zeros((n, self.n_features), dtype=np.float32)
        x[:, self.numeric_pos] = numeric
        rows = np.arange(n)
        for off, c in zip(self.offsets, codes, strict=True):
            x[rows, off + c] = 1.0
        return x


def nslkdd_layout(categories: dict | None = None) -> FeatureLayout:
    """The NSL-KDD feature layout (label and difficulty excluded); 125 features by default."""
    cols = NSLKDD_COLUMNS
    skip = {NSLKDD_LABEL, *NSLKDD_IGNORE}
    return FeatureLayout(
        cols,
        [i for i, c in enumerate(cols) if c not in skip],
        NSLKDD_CATEGORIES if categories is None else categories,
    )
