/*
 * Built by tests/lock.rs with musl-gcc (dynamic): musl's lock functions call
 * each other (pthread_mutex_lock -> pthread_mutex_timedlock ->
 * pthread_mutex_trylock), all of them probed. Prints its locks, waits for a
 * line on stdin, then: two threads take one mutex 20 times each, holding it
 * 1 ms; the first time, one of them holds it until the other is asleep in
 * the kernel waiting for it (inside those nested calls); a trylock of a
 * mutex another thread holds (EBUSY, once); two threads write-lock one
 * rwlock 5 times each, holding it 1 ms. Prints what it did.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MUTEX_ROUNDS 20
#define RWLOCK_ROUNDS 5

static pthread_mutex_t mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t rwlock = PTHREAD_RWLOCK_INITIALIZER;
static pthread_barrier_t held;
static volatile pid_t waiter;

/* Is thread tid blocked in futex() on an address inside `mutex`? */
static int waits_on_mutex(pid_t tid)
{
	char path[64], buf[256];
	unsigned long nr, arg0;
	FILE *f;
	int ok = 0;

	snprintf(path, sizeof(path), "/proc/self/task/%d/syscall", (int)tid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	if (fgets(buf, sizeof(buf), f) && sscanf(buf, "%lu %lx", &nr, &arg0) == 2)
		ok = nr == SYS_futex && arg0 >= (unsigned long)&mutex &&
		     arg0 < (unsigned long)&mutex + sizeof(mutex);
	fclose(f);
	return ok;
}

static void *mutex_rounds(void *arg)
{
	int first = arg != NULL;

	for (int i = 0; i < MUTEX_ROUNDS; i++) {
		pthread_mutex_lock(&mutex);
		if (first && i == 0) {
			/* hold it until the other one waits for it */
			pthread_barrier_wait(&held);
			for (int n = 0; n < 5000 && (!waiter || !waits_on_mutex(waiter)); n++)
				usleep(1000);
		}
		usleep(1000);
		pthread_mutex_unlock(&mutex);
	}
	return NULL;
}

static void *mutex_rounds_second(void *arg)
{
	(void)arg;
	pthread_barrier_wait(&held); /* the first one holds it */
	waiter = (pid_t)syscall(SYS_gettid);
	return mutex_rounds(NULL);
}

static void *rwlock_rounds(void *arg)
{
	(void)arg;
	for (int i = 0; i < RWLOCK_ROUNDS; i++) {
		pthread_rwlock_wrlock(&rwlock);
		usleep(1000);
		pthread_rwlock_unlock(&rwlock);
	}
	return NULL;
}

static void *hold_busy(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&busy);
	pthread_barrier_wait(&held); /* it is held */
	pthread_barrier_wait(&held); /* the trylock failed */
	pthread_mutex_unlock(&busy);
	return NULL;
}

static void both(void *(*first)(void *), void *arg, void *(*second)(void *))
{
	pthread_t a, b;

	pthread_create(&a, NULL, first, arg);
	pthread_create(&b, NULL, second, NULL);
	pthread_join(a, NULL);
	pthread_join(b, NULL);
}

int main(void)
{
	char line[16];
	pthread_t holder;
	int busy_ret;

	printf("{\"event\":\"ready\",\"pid\":%d,\"mutex\":\"%p\",\"busy\":\"%p\",\"rwlock\":\"%p\"}\n",
	       (int)getpid(), (void *)&mutex, (void *)&busy, (void *)&rwlock);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 1;

	pthread_barrier_init(&held, NULL, 2);
	both(mutex_rounds, (void *)1, mutex_rounds_second);

	pthread_create(&holder, NULL, hold_busy, NULL);
	pthread_barrier_wait(&held);
	busy_ret = pthread_mutex_trylock(&busy);
	pthread_barrier_wait(&held);
	pthread_join(holder, NULL);

	both(rwlock_rounds, NULL, rwlock_rounds);

	printf("{\"event\":\"done\",\"mutex_acquisitions\":%d,\"busy_acquisitions\":1,"
	       "\"busy_trylock_ret\":%d,\"rwlock_write_acquisitions\":%d}\n",
	       2 * MUTEX_ROUNDS, busy_ret, 2 * RWLOCK_ROUNDS);
	fflush(stdout);
	return busy_ret == EBUSY ? 0 : 1;
}
