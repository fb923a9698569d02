/* A shared library that is not a Switchboard module: it has no entry symbol. */
int some_function(int x) { return x + 1; }
