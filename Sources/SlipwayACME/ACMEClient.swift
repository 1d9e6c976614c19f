// The ACME client is being written (see Tests/SlipwayACMETests).
